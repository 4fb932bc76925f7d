//! Several workers on one campaign (PostgreSQL only, docs/scaling.md): the
//! lease settings, a worker's heartbeat ([`WorkerLease`]) and the rows
//! `edm status` shows ([`WorkerRow`]).
//!
//! A worker's lease is its row in `edm.workers`, not one value per claimed
//! recipient: a heartbeat renews every row a worker holds with one `UPDATE`
//! of its own row, instead of one `UPDATE` per claimed recipient (at a few
//! hundred messages per second and a 30 s lease, thousands of rows). A
//! claimed recipient names its worker (`claimed_by`); when the worker's lease
//! expires, any other worker puts its rows back (or in doubt when marked).
//!
//! SQLite and the memory store keep their exclusive run lock: one run at a
//! time, no lease ([`CampaignStore::lease`](crate::CampaignStore::lease) is
//! `None` there).

use std::time::Duration;

use crate::error::Result;
use crate::types::InDoubtPolicy;

/// How long a worker's lease lasts without a renewal.
pub const LEASE: Duration = Duration::from_secs(30);
/// How often a worker renews its lease (a third of it: two renewals may
/// fail before the lease lapses).
pub const RENEW_EVERY: Duration = Duration::from_secs(10);
/// A worker stops handing out work when its last renewal is older than the
/// lease minus this margin: it could otherwise send rows already handed to
/// others after its lease lapsed.
pub const MARGIN: Duration = Duration::from_secs(5);
/// The variable that shortens the lease, for tests only (milliseconds; the
/// renewal every third of it, the margin a sixth). Never set it in
/// production: a lease shorter than a stall of the process or the network
/// hands its rows to others while it still sends.
pub const LEASE_ENV: &str = "EDM_LEASE_MS";

/// A worker's lease timings.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct LeaseSettings {
    /// The lease's length.
    pub lease: Duration,
    /// How often it is renewed.
    pub renew_every: Duration,
    /// No work is handed out once the last renewal is older than
    /// `lease - margin`.
    pub margin: Duration,
}

impl Default for LeaseSettings {
    fn default() -> Self {
        LeaseSettings {
            lease: LEASE,
            renew_every: RENEW_EVERY,
            margin: MARGIN,
        }
    }
}

impl LeaseSettings {
    /// The defaults, or [`LEASE_ENV`]'s (tests) when set to a number of
    /// milliseconds of at least 300.
    pub fn from_env() -> LeaseSettings {
        std::env::var(LEASE_ENV)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|ms| *ms >= 300)
            .map(|ms| LeaseSettings {
                lease: Duration::from_millis(ms),
                renew_every: Duration::from_millis(ms / 3),
                margin: Duration::from_millis(ms / 6),
            })
            .unwrap_or_default()
    }

    /// The lease in milliseconds (for SQL).
    pub fn lease_ms(&self) -> i64 {
        i64::try_from(self.lease.as_millis()).unwrap_or(i64::MAX)
    }
}

/// What a worker says of itself at each heartbeat.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WorkerFigures {
    /// Accepted by this worker in this run.
    pub sent: u64,
    /// Failed permanently in this run.
    pub failed: u64,
    /// Transactions in progress.
    pub in_flight: u64,
    /// Its rate limit now (messages per second), if any.
    pub rate: Option<f64>,
    /// Its share of the campaign's limits (1 / live workers).
    pub share: f64,
    /// Effective / target rate when its relay throttles it (adaptive
    /// throttling), `None` when it runs at its target.
    pub throttle: Option<f64>,
}

/// What a heartbeat found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Renewal {
    /// The lease is lost: the worker's row was taken over (its lease expired
    /// and another worker put its rows back) or another process joined with
    /// its name. The worker must stop: its marks are refused.
    pub lost: bool,
    /// Live workers on the campaign, this one included.
    pub live: u32,
    /// The lowest throttle ratio among the other live workers (1.0: none
    /// throttled).
    pub min_throttle: f64,
    /// Workers whose lease had expired, recovered by this heartbeat.
    pub recovered: Vec<Recovered>,
    /// The operator's pause and rate for every worker, once one was set.
    pub controls: Option<SharedControls>,
    /// How many campaign-wide stops the operator asked so far (a dashboard's
    /// `q`, `y`; [`WorkerLease::publish_stop`]): a worker stops when this
    /// passes the count it saw at its first heartbeat, so a stop asked
    /// before it joined never stops it.
    pub stops: i64,
}

/// The operator's pause and rate, set from one worker's dashboard, for
/// every worker of the campaign (`edm.controls`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SharedControls {
    /// Bumped at each change: a worker applies a version newer than the
    /// last it saw.
    pub version: i64,
    /// Paused by the operator.
    pub paused: bool,
    /// The campaign's rate when the operator set one (`Some(None)`:
    /// unlimited).
    pub rate: Option<Option<f64>>,
}

/// The rows of a dead worker, recovered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// The dead worker's name.
    pub worker: String,
    /// Rows put back as before their claim (no durable mark: never reached
    /// the final dot).
    pub released: u64,
    /// Rows with a durable mark: in doubt (or pending again, flagged, under
    /// `--in-doubt resend`).
    pub in_doubt: u64,
}

pub use edm_model::WorkerRow;

/// A worker's heartbeat on its own connection (so a busy writer never holds
/// up a renewal): renews the lease, writes the worker's figures, recovers
/// the rows of workers whose lease expired, and counts the live ones.
pub trait WorkerLease: Send {
    /// The worker's name.
    fn name(&self) -> &str;
    /// The lease's timings.
    fn settings(&self) -> LeaseSettings;
    /// One heartbeat (see the trait). Rows of a dead worker are recovered
    /// under `policy`, as [`recover_in_doubt`](crate::CampaignStore::recover_in_doubt)
    /// does after a crash, in one transaction, logged as an event.
    fn renew(&mut self, figures: &WorkerFigures, policy: InDoubtPolicy) -> Result<Renewal>;
    /// The worker leaves (its run ended): `done`, its lease released, its
    /// last figures written.
    fn leave(&mut self, figures: &WorkerFigures) -> Result<()>;
    /// Sets the operator's pause (`Some`) and rate (`Some`) for every
    /// worker; returns the new version of the controls.
    fn publish(&mut self, paused: Option<bool>, rate: Option<Option<f64>>) -> Result<i64>;
    /// The campaign's workers (the dashboard's rows), read between
    /// heartbeats on the same connection; none by default.
    fn workers(&mut self) -> Result<Vec<WorkerRow>> {
        Ok(Vec::new())
    }
    /// The operator's stop for every worker: counts one more stop
    /// ([`Renewal::stops`]) and returns the new count. By default nobody
    /// else is told (0).
    fn publish_stop(&mut self) -> Result<i64> {
        Ok(0)
    }
}
