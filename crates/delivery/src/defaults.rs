//! edm's delivery defaults, defined once.
//!
//! `campaign.toml`'s serde defaults (edm-campaign), the engine's
//! [`DeliveryConfig::new`](crate::DeliveryConfig::new) and
//! [`RetryPolicy::default`](crate::RetryPolicy::default) all read these, so
//! a key left out of `[delivery]` or `[smtp]` and an engine built in a test
//! behave the same. `docs/campaign.md` lists them for users: change both
//! together.

use std::time::Duration;

/// `[delivery] concurrency`: SMTP connections (workers).
pub const CONCURRENCY: usize = 8;

/// `[delivery] burst`: messages allowed back to back after an idle moment
/// (1 = strictly spaced).
pub const BURST: u32 = 1;

/// `[delivery] max_attempts`: attempts per recipient, the first included.
pub const MAX_ATTEMPTS: u32 = 5;

/// `[delivery] retry_base`: the first step of the computed backoff.
pub const RETRY_BASE: Duration = Duration::from_secs(10);

/// The longest computed wait between two attempts (not a key: raised to
/// `retry_base` when that is longer).
pub const RETRY_CAP: Duration = Duration::from_secs(15 * 60);

/// `[delivery] retry_for`: give up on a recipient this long after its first
/// attempt.
pub const RETRY_FOR: Duration = Duration::from_secs(2 * 3600);

/// `[delivery] max_outage`: how long the relay may be unreachable, once it
/// has worked, before the run gives up.
pub const MAX_OUTAGE: Duration = Duration::from_secs(5 * 60);

/// `[delivery] quota_pause`: the pause when a provider says a quota is used
/// up without saying for how long.
pub const QUOTA_PAUSE: Duration = Duration::from_secs(15 * 60);

/// Consecutive connection failures that open the circuit breaker.
pub const BREAKER_THRESHOLD: u32 = 3;

/// `[smtp] connect_timeout`: TCP connect and the 220 greeting.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// `[smtp] command_timeout`: each command's reply. RFC 5321 §4.5.3.2 asks
/// for minutes; edm waits less and retries, as a stalled relay is the
/// likelier cause.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// `[smtp] data_timeout`: sending the message and reading the reply to the
/// final dot.
pub const DATA_TIMEOUT: Duration = Duration::from_secs(120);

/// `[delivery] stop_after_identical_refusals`: the same permanent refusal
/// for this many different recipients in a row stops the run (issue 10,
/// point 8; 0 never stops).
pub const STOP_AFTER_IDENTICAL_REFUSALS: u32 = 10;

/// Before any session has worked in a run, this many failed attempts to open
/// one end it (issue 10, point 7)...
pub const FAIL_FAST_ATTEMPTS: u32 = 3;

/// ...or this long without a working session, whichever comes first.
pub const FAIL_FAST_WITHIN: Duration = Duration::from_secs(30);
