//! The shared vocabulary of edm.
//!
//! Every other crate speaks these types; this crate does no I/O and knows
//! nothing of tokio, SQLite, CSV or terminals.
//!
//! # Layout
//! - [`RecipientId`], [`Recipient`]: one row of a campaign, as the store keeps it.
//! - [`Envelope`]: a rendered message ready for SMTP.
//! - [`Status`]: the per-recipient state machine (see `docs/resume.md`).
//! - [`Failure`], [`Category`], [`Stage`]: what went wrong, classified once.
//! - [`DeliveryEvent`], [`Notice`]: what the delivery engine reports.
//! - [`Control`]: what an operator asks of a running campaign.
//! - [`Progress`]: the snapshot dashboards and progress lines render, built by
//!   [`ProgressFold`] from the run's events (per relay too: [`RelayTally`]).
//! - [`normalize_address`], [`ascii_address`], [`ascii_domain`]: internationalised
//!   addresses, their wire form and their dedupe key (`address.rs`).
#![deny(missing_docs)]

mod address;
mod failure;
mod progress;

pub use address::{ascii_address, ascii_domain, normalize_address};
pub use failure::{Category, Failure, Reply, Retry, Stage};
pub use progress::{
    DomainCounts, EventLine, FailureRow, LateTally, Progress, ProgressFold, Recorded, RelayState,
    RelayTally, RunState, StoreMark, WorkerRow,
};

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch: the one time format persisted and exchanged.
pub type UnixMillis = i64;

/// The current wall-clock time in [`UnixMillis`].
pub fn now_ms() -> UnixMillis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Adds a duration to a timestamp, saturating.
pub fn add_ms(at: UnixMillis, d: Duration) -> UnixMillis {
    at.saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The store's row id of a recipient, stable for the life of a campaign.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct RecipientId(pub i64);

impl fmt::Display for RecipientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// A recipient ready to be rendered: the address and the values of its CSV row.
///
/// `values` line up with the campaign's column names (the CSV header).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recipient {
    /// Row id in the store.
    pub id: RecipientId,
    /// 1-based line of the CSV where the row starts.
    pub line: u64,
    /// The address, trimmed, as it will be used in RCPT TO.
    pub email: String,
    /// The row's values in header order.
    pub values: Vec<String>,
    /// Attempts already made before this one.
    pub attempts: u32,
    /// When the first attempt was made, in any run (`None`: never attempted).
    /// `retry_for` counts from here.
    pub first_attempt_at: Option<UnixMillis>,
}

/// A rendered message for one recipient, as delivery needs it.
#[derive(Clone, Debug)]
pub struct Envelope {
    /// Whose message this is.
    pub id: RecipientId,
    /// Envelope sender (MAIL FROM).
    pub mail_from: String,
    /// Envelope recipient (RCPT TO).
    pub rcpt_to: String,
    /// Lower-cased domain of `rcpt_to`, for per-domain limits.
    pub domain: String,
    /// The Message-ID header value, without angle brackets.
    pub message_id: String,
    /// The whole message, headers and body, CRLF line endings.
    pub body: Vec<u8>,
    /// The recipient's history of attempts, handed back with the outcome
    /// so the run needs no side table to decide a retry.
    pub attempt: Attempt,
}

/// Where an envelope stands in its recipient's history of attempts. It
/// travels with the envelope through delivery and comes back in every
/// [`DeliveryEvent`] about it: the retry policy (`retry_for` counts from
/// the first attempt, `max_attempts` counts attempts) and the retry budget
/// need nothing else.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Attempt {
    /// Attempts already made before this one (any run).
    pub before: u32,
    /// When the first attempt was made, in any run (this one when it is the
    /// first; `None`: not known, as in test sends).
    pub first_at: Option<UnixMillis>,
    /// Attempted before (a deferral, an in-doubt resend): counts against
    /// the run's retry budget.
    pub retry: bool,
}

impl Attempt {
    /// The attempt a claimed recipient is about to get. `claimed_at` is the
    /// time the claim was made: a first attempt time before it means the
    /// recipient was attempted before (the store sets it at the first claim
    /// and keeps it).
    pub fn of(r: &Recipient, claimed_at: UnixMillis) -> Attempt {
        Attempt {
            before: r.attempts,
            first_at: r.first_attempt_at,
            retry: r.attempts > 0 || r.first_attempt_at.is_some_and(|t| t < claimed_at),
        }
    }
}

/// Where a recipient stands. Persisted by its [`Status::as_str`] name.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Not yet attempted (or released back after a graceful stop).
    Pending,
    /// Handed to delivery; durable before the message's DATA ends.
    Sending,
    /// Accepted by the server (final).
    Sent,
    /// Failed transiently; will be retried after `next_attempt_at`.
    Deferred,
    /// Failed permanently, or out of attempts (final).
    Failed,
    /// Rejected at ingest: bad address or malformed row (final).
    Invalid,
    /// A duplicate of an earlier row, or removed from the input (final).
    Skipped,
    /// On a suppression list (final).
    Suppressed,
    /// Was `sending` when a run died: the server may have accepted it.
    InDoubt,
}

impl Status {
    /// Every status, in display order.
    pub const ALL: [Status; 9] = [
        Status::Pending,
        Status::Sending,
        Status::Sent,
        Status::Deferred,
        Status::Failed,
        Status::Invalid,
        Status::Skipped,
        Status::Suppressed,
        Status::InDoubt,
    ];

    /// The persisted name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Sending => "sending",
            Status::Sent => "sent",
            Status::Deferred => "deferred",
            Status::Failed => "failed",
            Status::Invalid => "invalid",
            Status::Skipped => "skipped",
            Status::Suppressed => "suppressed",
            Status::InDoubt => "in_doubt",
        }
    }

    /// Parses a persisted name.
    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// True when no further attempt will be made without an operator's action.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Status::Sent | Status::Failed | Status::Invalid | Status::Skipped | Status::Suppressed
        )
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the delivery engine reports about one envelope, or about itself.
#[derive(Clone, Debug)]
pub enum DeliveryEvent {
    /// The server accepted the message at the end of DATA.
    Accepted {
        /// Whose message.
        id: RecipientId,
        /// The server's final reply.
        reply: Reply,
        /// The recipient's domain (A-label form, as in [`Envelope::domain`]).
        domain: String,
        /// The Message-ID the message was sent with.
        message_id: String,
        /// The envelope's history of attempts, as it was handed in.
        attempt: Attempt,
        /// The relay that accepted it (a pool member's name, or the one relay).
        relay: String,
    },
    /// The transaction failed; the failure says whether it is transient.
    Rejected {
        /// Whose message.
        id: RecipientId,
        /// The classified failure.
        failure: Failure,
        /// The recipient's domain.
        domain: String,
        /// The envelope's history of attempts.
        attempt: Attempt,
        /// The relay that refused it.
        relay: String,
        /// The recipient's address (`RCPT TO`), for the failures view.
        rcpt_to: String,
    },
    /// The envelope was never attempted (the engine stopped): it goes back to pending.
    Returned {
        /// Whose message.
        id: RecipientId,
    },
    /// Something about the engine itself worth showing an operator.
    Notice(Notice),
    /// Refused by a reply that would hit every message (the sender or the
    /// credentials refused, or the same refusal for many recipients in a
    /// row): the run stops and the recipient goes back to pending with the
    /// reply kept, never failed.
    Held {
        /// Whose message.
        id: RecipientId,
        /// The refusal.
        failure: Failure,
        /// The recipient's domain.
        domain: String,
        /// The envelope's history of attempts.
        attempt: Attempt,
        /// The relay that refused it.
        relay: String,
        /// The recipient's address (`RCPT TO`).
        rcpt_to: String,
    },
    /// The final dot was sent and no reply came (a timeout, a lost
    /// connection): the server may have accepted the message.
    InDoubt {
        /// Whose message.
        id: RecipientId,
        /// What happened instead of a reply.
        failure: Failure,
        /// The recipient's domain.
        domain: String,
        /// The envelope's history of attempts.
        attempt: Attempt,
        /// The relay the message went to.
        relay: String,
        /// The recipient's address (`RCPT TO`), for the failures view.
        rcpt_to: String,
    },
}

impl DeliveryEvent {
    /// The recipient the event is about (`None` for a [`Notice`]).
    pub fn id(&self) -> Option<RecipientId> {
        match self {
            DeliveryEvent::Accepted { id, .. }
            | DeliveryEvent::Rejected { id, .. }
            | DeliveryEvent::Returned { id }
            | DeliveryEvent::Held { id, .. }
            | DeliveryEvent::InDoubt { id, .. } => Some(*id),
            DeliveryEvent::Notice(_) => None,
        }
    }
}

/// Engine-level happenings: rate changes, connections, the circuit breaker.
#[derive(Clone, Debug, PartialEq)]
pub enum Notice {
    /// The effective global rate changed.
    RateChanged {
        /// Messages per second before.
        from: f64,
        /// Messages per second now.
        to: f64,
        /// Why: a throttling reply, a quiet period, an operator.
        cause: String,
    },
    /// A connection could not be made or was lost; delivery will retry it.
    ConnectionProblem {
        /// The failure that caused it.
        failure: Failure,
    },
    /// Every connection is failing: the engine holds recipients and probes the server.
    BreakerOpen {
        /// The failure that opened it.
        reason: String,
    },
    /// The server answers again.
    BreakerClosed,
    /// Paused by the operator or by a quota.
    Paused {
        /// Why.
        reason: String,
    },
    /// Resumed.
    Resumed,
    /// The run stops: the relay cannot be used, refuses every message, or
    /// edm met an internal error.
    Stopping {
        /// Why, with the relay's reply when there is one.
        reason: String,
    },
    /// A relay of a pool was taken out (unreachable, credentials or sender
    /// refused): its traffic moves to the others for the rest of the run.
    RelayDown {
        /// `[[relay]] name`.
        relay: String,
        /// Why.
        failure: Failure,
    },
    /// A relay of a pool is in service (said once per member at the start of
    /// a run, so the last run's states can be read back from the events).
    RelayUp {
        /// `[[relay]] name`.
        relay: String,
    },
}

impl fmt::Display for Notice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Notice::RateChanged { from, to, cause } => {
                write!(f, "rate {from:.1}/s -> {to:.1}/s ({cause})")
            }
            Notice::ConnectionProblem { failure } => {
                write!(
                    f,
                    "connection: {} at {}: {}",
                    failure.category, failure.stage, failure.reply
                )
            }
            Notice::BreakerOpen { reason } => write!(f, "circuit breaker open: {reason}"),
            Notice::BreakerClosed => f.write_str("circuit breaker closed: server answers again"),
            Notice::Paused { reason } => write!(f, "paused: {reason}"),
            Notice::Resumed => f.write_str("resumed"),
            Notice::Stopping { reason } => write!(f, "run stopped: {reason}"),
            Notice::RelayDown { relay, failure } => write!(
                f,
                "relay {relay:?} down, its traffic moves to the others: {} at {}: {}",
                failure.category, failure.stage, failure.reply
            ),
            Notice::RelayUp { relay } => write!(f, "relay {relay:?} up"),
        }
    }
}

/// What an operator asks of a running campaign (keys in the dashboard, signals).
#[derive(Copy, Clone, Debug, PartialEq)]
pub enum Control {
    /// Stop starting new transactions; in-flight ones finish.
    Pause,
    /// Undo [`Control::Pause`].
    Resume,
    /// Set the target rate in messages per second (`None`: unlimited).
    SetRate(Option<f64>),
    /// Graceful stop: finish and record in-flight transactions, then exit.
    Stop,
    /// This worker's share of the campaign's limits (0 < share <= 1), when
    /// several workers send one campaign (PostgreSQL, docs/scaling.md): the
    /// campaign's rate and burst, the per-domain rates and the relays'
    /// rates are multiplied by it, so that the workers' sum stays within
    /// the limits.
    SetShare(f64),
    /// The operator's stop from a dashboard (`q`, `y`): a graceful
    /// [`Control::Stop`] of this run and, when several workers send one
    /// campaign (PostgreSQL, docs/scaling.md), of every worker at its next
    /// heartbeat. A signal (Ctrl-C, SIGTERM, SIGHUP: systemd stopping one
    /// machine's unit) sends [`Control::Stop`] and stays local.
    StopAll,
}

/// Returns the lower-cased domain of an address (the part after the last
/// `@`), in A-label form ([`ascii_domain`]) so both spellings of an
/// internationalised domain are one domain for per-domain limits.
pub fn domain_of(address: &str) -> String {
    address
        .rsplit_once('@')
        .map(|(_, d)| {
            let d = d.trim();
            ascii_domain(d).map_or_else(|_| d.to_lowercase(), |d| d.into_owned())
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_names_round_trip() {
        for st in Status::ALL {
            assert_eq!(Status::parse(st.as_str()), Some(st));
        }
        assert_eq!(Status::parse("nope"), None);
    }

    #[test]
    fn final_statuses() {
        assert!(Status::Sent.is_final());
        assert!(!Status::Deferred.is_final());
        assert!(!Status::InDoubt.is_final());
        assert!(!Status::Pending.is_final());
    }

    #[test]
    fn an_attempt_is_a_retry_when_the_recipient_was_tried_before() {
        let r = |attempts, first_attempt_at| Recipient {
            id: RecipientId(1),
            line: 2,
            email: "a@x".into(),
            values: vec![],
            attempts,
            first_attempt_at,
        };
        // The claim at 100 set the first attempt: a first attempt.
        let first = Attempt::of(&r(0, Some(100)), 100);
        assert_eq!(
            (first.before, first.first_at, first.retry),
            (0, Some(100), false)
        );
        // Tried in an earlier claim (a throttled deferral counts no attempt).
        assert!(Attempt::of(&r(0, Some(40)), 100).retry);
        assert!(Attempt::of(&r(2, Some(100)), 100).retry);
    }

    #[test]
    fn domain_is_lower_cased_after_last_at() {
        assert_eq!(domain_of("A@B@Example.COM"), "example.com");
        assert_eq!(domain_of("nodomain"), "");
    }
}
