//! One worker among several on a campaign in PostgreSQL (issue 14,
//! docs/scaling.md): its heartbeat, on a thread and a connection of its own
//! so that a busy writer never holds up a renewal.
//!
//! Each heartbeat (every third of the lease) renews the worker's lease,
//! writes its figures (sent, failed, in flight, rate) for `edm status`,
//! recovers the rows of workers whose lease expired, and counts the live
//! workers: this worker then runs at `1 / live` of the campaign's limits
//! ([`Control::SetShare`]). A worker that joins waits one heartbeat before
//! its first message, so the others have lowered their share by then; when
//! one dies, the others raise theirs only once its lease expired (it is
//! counted live until then). Adaptive throttling seen by one worker slows
//! them all: each applies the lowest throttle ratio of the others.
//!
//! A heartbeat that finds the lease lost (taken over) stops the run: its
//! marks would be refused anyway (fencing, `edm_store::postgres`), and the
//! feeder hands out nothing once the last renewal is older than the lease
//! minus a margin.

use edm_delivery::EngineStatus;
use edm_model::{Control, now_ms};
use edm_store::{
    InDoubtPolicy, LeaseSettings, SharedControls, WorkerFigures, WorkerLease, WorkerRow,
};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc as std_mpsc};
use std::thread::JoinHandle;
use tokio::sync::{mpsc, watch};

/// What the heartbeat thread is asked.
enum Beat {
    /// A heartbeat now (a worker waiting on others' rows recovers expired
    /// leases at once rather than at the next tick).
    Now,
    /// The run ended: leave.
    Stop,
    /// The operator's pause or rate, for every worker (`edm.controls`).
    Publish(Control),
}

/// What the run reads of its membership, and writes for the heartbeat.
pub(crate) struct Membership {
    /// The worker's name.
    pub name: String,
    settings: LeaseSettings,
    /// When the lease was last renewed (Unix ms), 0 before.
    last_ok: AtomicI64,
    lost: AtomicBool,
    share: AtomicU64,
    /// 1 / live workers (the share without the others' throttle), for the
    /// dashboard: running at it is no throttle.
    fair: AtomicU64,
    /// Accepted and failed in this run, for the worker's row.
    pub sent: AtomicU64,
    pub failed: AtomicU64,
    poke: Mutex<std_mpsc::Sender<Beat>>,
    /// True once the worker may send (after its join wait).
    ready: watch::Sender<bool>,
    /// The engine, once the run started it ([`Member::attach`]): the
    /// heartbeat runs from the join on, ingest included, before there is one.
    engine: Mutex<Option<Engine>>,
    /// The operator's controls as this worker last applied or set them.
    known: Mutex<Option<SharedControls>>,
    /// The campaign's workers as last read (the dashboard's rows).
    workers: Mutex<Vec<WorkerRow>>,
    /// The operator's campaign-wide stops counted so far as seen: `None`
    /// before the first heartbeat, which takes the store's count as seen
    /// (a stop asked before this worker joined does not stop it).
    stops_seen: Mutex<Option<i64>>,
    /// Set when the operator stopped the campaign from another worker's
    /// dashboard: the run stops as its own `q` would (before the run
    /// started too: it stops at once then).
    remote_stop: watch::Sender<bool>,
}

/// What the heartbeat reads of the engine and tells it.
type Engine = (
    watch::Receiver<EngineStatus>,
    mpsc::UnboundedSender<Control>,
);

impl Membership {
    /// False once the last renewal is older than the lease minus the
    /// margin: no work is handed out then.
    pub fn fresh(&self) -> bool {
        let last = self.last_ok.load(Ordering::SeqCst);
        let limit = self.settings.lease.saturating_sub(self.settings.margin);
        now_ms() - last < i64::try_from(limit.as_millis()).unwrap_or(i64::MAX)
    }

    /// The lease was taken over, or could not be renewed for a whole lease
    /// (the store unreachable: others may have taken the rows over by now):
    /// the run stops.
    pub fn lost(&self) -> bool {
        let lease = i64::try_from(self.settings.lease.as_millis()).unwrap_or(i64::MAX);
        self.lost.load(Ordering::SeqCst) || now_ms() - self.last_ok.load(Ordering::SeqCst) > lease
    }

    /// What the run says when the lease was lost.
    pub fn lost_message(&self) -> String {
        if self.lost.load(Ordering::SeqCst) {
            format!(
                "worker {}: its lease was taken over (not renewed in time, or another process \
                 joined under its name): stopping; messages in flight are not completed",
                self.name
            )
        } else {
            format!(
                "worker {}: its lease could not be renewed for {} s (the store unreachable?): \
                 another worker may take its recipients over, so it stops",
                self.name,
                self.settings.lease.as_secs_f64().round()
            )
        }
    }

    /// Asks for a heartbeat now.
    pub fn poke(&self) {
        if let Ok(p) = self.poke.lock() {
            let _ = p.send(Beat::Now);
        }
    }

    /// Waits until the worker may send its first message.
    pub async fn ready(&self) {
        let mut rx = self.ready.subscribe();
        let _ = rx.wait_for(|r| *r).await;
    }

    fn share(&self) -> f64 {
        f64::from_bits(self.share.load(Ordering::SeqCst))
    }

    /// 1 / live workers at the last heartbeat.
    pub fn fair_share(&self) -> f64 {
        f64::from_bits(self.fair.load(Ordering::SeqCst))
    }

    /// The campaign's workers as last read (every heartbeat, and every
    /// [`VIEW_EVERY`] between them).
    pub fn workers(&self) -> Vec<WorkerRow> {
        self.workers.lock().map(|w| w.clone()).unwrap_or_default()
    }

    /// True once the operator stopped the campaign from another worker.
    pub fn remote_stop(&self) -> watch::Receiver<bool> {
        self.remote_stop.subscribe()
    }
}

/// How often the workers' rows are read between heartbeats, for the
/// dashboard (one small query on the heartbeat's connection).
pub(crate) const VIEW_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// The heartbeat thread, from the join on (a long ingest included);
/// dropping it ends the thread and leaves the campaign.
pub(crate) struct Member {
    pub state: Arc<Membership>,
    stop: std_mpsc::Sender<Beat>,
    join: Option<JoinHandle<()>>,
}

impl Member {
    /// Starts the heartbeat of `lease` (the worker joined already).
    pub fn start(lease: Box<dyn WorkerLease>, policy: InDoubtPolicy) -> std::io::Result<Member> {
        let (tx, rx) = std_mpsc::channel();
        let (ready, _) = watch::channel(false);
        let (remote_stop, _) = watch::channel(false);
        let state = Arc::new(Membership {
            name: lease.name().to_string(),
            settings: lease.settings(),
            last_ok: AtomicI64::new(now_ms()),
            lost: AtomicBool::new(false),
            share: AtomicU64::new(1.0f64.to_bits()),
            fair: AtomicU64::new(1.0f64.to_bits()),
            sent: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            poke: Mutex::new(tx.clone()),
            ready,
            engine: Mutex::new(None),
            known: Mutex::new(None),
            workers: Mutex::new(Vec::new()),
            stops_seen: Mutex::new(None),
            remote_stop,
        });
        let s2 = state.clone();
        let join = std::thread::Builder::new()
            .name("edm-heartbeat".into())
            .spawn(move || heartbeat(lease, Beating { state: s2, policy }, rx))?;
        Ok(Member {
            state,
            stop: tx,
            join: Some(join),
        })
    }

    /// The run's engine: the heartbeat reports its figures and sets its
    /// share from now on (the share known so far at once).
    pub fn attach(
        &self,
        status: watch::Receiver<EngineStatus>,
        control: mpsc::UnboundedSender<Control>,
    ) {
        let share = self.state.share();
        if share < 1.0 {
            let _ = control.send(Control::SetShare(share));
        }
        // The operator's pause and rate set on another worker meanwhile.
        let known = self.state.known.lock().ok().and_then(|k| k.clone());
        for c in controls_to_apply(None, known.as_ref()) {
            let _ = control.send(c);
        }
        if let Ok(mut e) = self.state.engine.lock() {
            *e = Some((status, control));
        }
    }

    /// The operator paused, resumed, set the rate or stopped from this
    /// worker's dashboard: every worker applies it at its next heartbeat
    /// (`edm.controls`, the count of stops). A signal's [`Control::Stop`]
    /// stays this worker's (systemd stopping one machine's unit stops one
    /// worker); the dashboard's stop is [`Control::StopAll`].
    pub fn publish(&self, c: Control) {
        if matches!(
            c,
            Control::Pause | Control::Resume | Control::SetRate(_) | Control::StopAll
        ) {
            let _ = self.stop.send(Beat::Publish(c));
        }
    }

    /// Stops the heartbeat and leaves the campaign (`done`); call it once
    /// every outcome is recorded, so no row is left `sending` under a
    /// worker that is no longer running. Blocks for one round trip.
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.stop.send(Beat::Stop);
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

struct Beating {
    state: Arc<Membership>,
    policy: InDoubtPolicy,
}

impl Beating {
    fn control(&self, c: Control) {
        if let Ok(e) = self.state.engine.lock()
            && let Some((_, control)) = e.as_ref()
        {
            let _ = control.send(c);
        }
    }
}

fn heartbeat(mut lease: Box<dyn WorkerLease>, b: Beating, rx: std_mpsc::Receiver<Beat>) {
    let every = b.state.settings.renew_every;
    // Joining: one heartbeat now; with others live, one more after a whole
    // interval (they have seen this worker by then and lowered their share)
    // before the first message.
    let first = beat(lease.as_mut(), &b);
    let mut stopped = false;
    if first.is_some_and(|live| live > 1) {
        // A whole interval: pokes do not cut it short.
        let until = std::time::Instant::now() + every;
        while !stopped {
            let left = until.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(Beat::Now) => {}
                Ok(Beat::Publish(c)) => publish(lease.as_mut(), &b, c),
                Err(std_mpsc::RecvTimeoutError::Timeout) => break,
                Ok(Beat::Stop) | Err(std_mpsc::RecvTimeoutError::Disconnected) => stopped = true,
            }
        }
        if !stopped {
            beat(lease.as_mut(), &b);
        }
    }
    b.state.ready.send_replace(true);
    if stopped {
        return leave(lease.as_mut(), &b);
    }
    let view_every = VIEW_EVERY.min(every);
    let mut next_beat = std::time::Instant::now() + every;
    loop {
        let wait = next_beat
            .saturating_duration_since(std::time::Instant::now())
            .min(view_every);
        let mut asked = match rx.recv_timeout(wait) {
            Ok(m) => vec![m],
            Err(std_mpsc::RecvTimeoutError::Timeout) => Vec::new(),
            Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
        };
        // Everything queued meanwhile: pokes are one heartbeat.
        while let Ok(more) = rx.try_recv() {
            asked.push(more);
        }
        let (mut stop, mut renew) = (false, std::time::Instant::now() >= next_beat);
        for m in asked {
            match m {
                Beat::Stop => stop = true,
                Beat::Now => renew = true,
                Beat::Publish(c) => publish(lease.as_mut(), &b, c),
            }
        }
        if stop {
            break;
        }
        if renew {
            beat(lease.as_mut(), &b);
            next_beat = std::time::Instant::now() + every;
        } else {
            read_workers(lease.as_mut(), &b);
        }
    }
    leave(lease.as_mut(), &b);
}

/// Sets the operator's pause or rate for every worker. The version is not
/// taken as seen: a change another worker made just before is then still
/// applied at the next heartbeat; this one's own is known already.
fn publish(lease: &mut dyn WorkerLease, b: &Beating, c: Control) {
    if c == Control::StopAll {
        return publish_stop(lease, b);
    }
    let (paused, rate) = match c {
        Control::Pause => (Some(true), None),
        Control::Resume => (Some(false), None),
        Control::SetRate(r) => (None, Some(r)),
        _ => return,
    };
    match lease.publish(paused, rate) {
        Ok(_) => {
            if let Ok(mut k) = b.state.known.lock() {
                let mut now = k.clone().unwrap_or_default();
                if let Some(p) = paused {
                    now.paused = p;
                }
                if let Some(r) = rate {
                    now.rate = Some(r);
                }
                *k = Some(now);
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot pass the operator's control to the other workers")
        }
    }
}

/// Counts one more campaign-wide stop; this worker's own is seen already
/// (it stops by itself).
fn publish_stop(lease: &mut dyn WorkerLease, b: &Beating) {
    match lease.publish_stop() {
        Ok(n) => {
            if let Ok(mut seen) = b.state.stops_seen.lock() {
                *seen = Some(seen.map_or(n, |s| s.max(n)));
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot pass the operator's stop to the other workers")
        }
    }
}

/// Reads the campaign's workers for the dashboard (a failure keeps the
/// last rows: a display is never worth more than a warning).
fn read_workers(lease: &mut dyn WorkerLease, b: &Beating) {
    match lease.workers() {
        Ok(rows) => {
            if let Ok(mut w) = b.state.workers.lock() {
                *w = rows;
            }
        }
        Err(e) => tracing::debug!(error = %e, "cannot read the campaign's workers"),
    }
}

/// What to tell the engine to go from the controls `before` to `now`.
fn controls_to_apply(
    before: Option<&SharedControls>,
    now: Option<&SharedControls>,
) -> Vec<Control> {
    let Some(now) = now else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let was_paused = before.is_some_and(|b| b.paused);
    if now.paused != was_paused {
        out.push(if now.paused {
            Control::Pause
        } else {
            Control::Resume
        });
    }
    if let Some(rate) = now.rate
        && before.and_then(|b| b.rate) != Some(rate)
    {
        out.push(Control::SetRate(rate));
    }
    out
}

/// The run ended: `done`, with the last figures (nothing when the lease
/// was taken over: the row is another incarnation's or `dead`).
fn leave(lease: &mut dyn WorkerLease, b: &Beating) {
    if let Err(e) = lease.leave(&figures(b)) {
        tracing::warn!(error = %e, "cannot mark this worker done; its lease will expire");
    }
}

/// What the worker says of itself.
fn figures(b: &Beating) -> WorkerFigures {
    let st = b.state.as_ref();
    let es = st
        .engine
        .lock()
        .ok()
        .and_then(|e| e.as_ref().map(|(status, _)| status.borrow().clone()))
        .unwrap_or_default();
    let share = st.share();
    // AIMD's rate over the target (both at this worker's share).
    let throttle = match (es.effective_rate, es.target_rate) {
        (Some(e), Some(t)) if t > 0.0 && e < t * 0.999 => Some(e / t),
        _ => None,
    };
    WorkerFigures {
        sent: st.sent.load(Ordering::Relaxed),
        failed: st.failed.load(Ordering::Relaxed),
        in_flight: es.in_flight,
        rate: es.effective_rate,
        share,
        throttle,
    }
}

/// One heartbeat; the live workers when it renewed.
fn beat(lease: &mut dyn WorkerLease, b: &Beating) -> Option<u32> {
    let st = b.state.as_ref();
    let share = st.share();
    match lease.renew(&figures(b), b.policy) {
        Ok(r) if r.lost => {
            st.lost.store(true, Ordering::SeqCst);
            tracing::error!("{}", st.lost_message());
            b.control(Control::Stop);
            None
        }
        Ok(r) => {
            st.last_ok.store(now_ms(), Ordering::SeqCst);
            for d in &r.recovered {
                tracing::warn!(
                    worker = %d.worker,
                    released = d.released,
                    in_doubt = d.in_doubt,
                    "a worker's lease expired: its recipients were taken over"
                );
            }
            // The operator's pause or rate set on another worker.
            if let Some(ctl) = &r.controls
                && let Ok(mut k) = st.known.lock()
                && k.as_ref().is_none_or(|p| ctl.version > p.version)
            {
                for c in controls_to_apply(k.as_ref(), Some(ctl)) {
                    tracing::info!(?c, "the operator's control, from another worker");
                    b.control(c);
                }
                *k = Some(ctl.clone());
            }
            // The operator's stop from another worker's dashboard, asked
            // since this worker's first heartbeat.
            if let Ok(mut seen) = st.stops_seen.lock() {
                if seen.is_some_and(|s| r.stops > s) {
                    tracing::warn!(
                        "stopping: the operator stopped the campaign from another worker"
                    );
                    st.remote_stop.send_replace(true);
                }
                *seen = Some(seen.map_or(r.stops, |s| s.max(r.stops)));
            }
            // The others' lowest throttle ratio (this worker's own is in
            // its rate already).
            let fair = 1.0 / f64::from(r.live.max(1));
            st.fair.store(fair.to_bits(), Ordering::SeqCst);
            let next = fair * r.min_throttle.clamp(0.05, 1.0);
            if (next - share).abs() > 1e-9 {
                st.share.store(next.to_bits(), Ordering::SeqCst);
                b.control(Control::SetShare(next));
            }
            read_workers(lease, b);
            Some(r.live)
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot renew this worker's lease");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU32;
    use std::time::Duration;

    use edm_store::{Renewal, Result as StoreResult};

    use super::*;

    /// A lease that answers what the test scripts: `live` workers, or an
    /// error (the store unreachable) once `fail` is set.
    struct Fake {
        live: Arc<AtomicU32>,
        fail: Arc<AtomicBool>,
        left: Arc<AtomicBool>,
        controls: Arc<Mutex<Option<SharedControls>>>,
        /// The campaign's count of stops ([`Renewal::stops`]).
        stops: Arc<std::sync::atomic::AtomicI64>,
    }

    impl WorkerLease for Fake {
        fn name(&self) -> &str {
            "fake"
        }
        fn settings(&self) -> LeaseSettings {
            LeaseSettings {
                lease: Duration::from_millis(600),
                renew_every: Duration::from_millis(200),
                margin: Duration::from_millis(100),
            }
        }
        fn renew(&mut self, _: &WorkerFigures, _: InDoubtPolicy) -> StoreResult<Renewal> {
            if self.fail.load(Ordering::SeqCst) {
                return Err(edm_store::Error::StoreConfig {
                    message: "unreachable".into(),
                });
            }
            Ok(Renewal {
                live: self.live.load(Ordering::SeqCst),
                min_throttle: 1.0,
                controls: self.controls.lock().unwrap().clone(),
                stops: self.stops.load(Ordering::SeqCst),
                ..Renewal::default()
            })
        }
        fn leave(&mut self, _: &WorkerFigures) -> StoreResult<()> {
            self.left.store(true, Ordering::SeqCst);
            Ok(())
        }
        fn publish(&mut self, _: Option<bool>, _: Option<Option<f64>>) -> StoreResult<i64> {
            Ok(1)
        }
        fn workers(&mut self) -> StoreResult<Vec<WorkerRow>> {
            Ok(vec![WorkerRow {
                name: "other".into(),
                alive: true,
                sent: u64::try_from(self.stops.load(Ordering::SeqCst)).unwrap_or(0),
                ..WorkerRow::default()
            }])
        }
        fn publish_stop(&mut self) -> StoreResult<i64> {
            Ok(self.stops.fetch_add(1, Ordering::SeqCst) + 1)
        }
    }

    fn fake(live: u32) -> (Fake, Arc<std::sync::atomic::AtomicI64>) {
        let stops = Arc::new(std::sync::atomic::AtomicI64::new(0));
        let f = Fake {
            live: Arc::new(AtomicU32::new(live)),
            fail: Arc::default(),
            left: Arc::default(),
            controls: Arc::default(),
            stops: stops.clone(),
        };
        (f, stops)
    }

    #[tokio::test]
    async fn a_stop_from_another_dashboard_stops_this_worker_but_not_an_older_one() {
        // Two stops were asked before this worker joined: they are seen.
        let (f, stops) = fake(1);
        stops.store(2, Ordering::SeqCst);
        let member = Member::start(Box::new(f), InDoubtPolicy::Resend).unwrap();
        member.state.ready().await;
        let mut stop = member.state.remote_stop();
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!*stop.borrow(), "a stop asked before it joined");
        // The rows are read at each heartbeat and between them.
        assert_eq!(member.state.workers()[0].name, "other");
        // Another worker's dashboard stops the campaign.
        stops.store(3, Ordering::SeqCst);
        tokio::time::timeout(Duration::from_secs(2), stop.wait_for(|s| *s))
            .await
            .expect("the stop reaches this worker at its next heartbeat")
            .unwrap();
        member.stop();
    }

    #[tokio::test]
    async fn the_dashboards_stop_is_counted_for_the_others_and_not_replayed_here() {
        let (f, stops) = fake(1);
        let member = Member::start(Box::new(f), InDoubtPolicy::Resend).unwrap();
        member.state.ready().await;
        let stop = member.state.remote_stop();
        // A signal's stop stays this worker's: nothing counted.
        member.publish(Control::Stop);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(stops.load(Ordering::SeqCst), 0);
        // The dashboard's stop is counted once, for the others.
        member.publish(Control::StopAll);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(stops.load(Ordering::SeqCst), 1);
        assert!(!*stop.borrow(), "its own stop is not applied again");
        member.stop();
    }

    #[tokio::test]
    async fn a_worker_joins_after_one_heartbeat_follows_the_live_count_and_stops_without_renewals()
    {
        let live = Arc::new(AtomicU32::new(2));
        let fail = Arc::new(AtomicBool::new(false));
        let left = Arc::new(AtomicBool::new(false));
        let fake = Fake {
            live: live.clone(),
            fail: fail.clone(),
            left: left.clone(),
            controls: Arc::default(),
            stops: Arc::default(),
        };
        let started = std::time::Instant::now();
        let member = Member::start(Box::new(fake), InDoubtPolicy::Resend).unwrap();
        let (_status_tx, status) = watch::channel(EngineStatus::default());
        let (control, mut controls) = mpsc::unbounded_channel();
        member.attach(status, control);
        // Another worker is live: one whole heartbeat before the first message.
        member.state.ready().await;
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert_eq!(controls.recv().await, Some(Control::SetShare(0.5)));
        // A third joins: the share follows at the next heartbeat.
        live.store(3, Ordering::SeqCst);
        let next = controls.recv().await.unwrap();
        assert!(matches!(next, Control::SetShare(s) if (s - 1.0 / 3.0).abs() < 1e-9));
        assert!(member.state.fresh() && !member.state.lost());
        // The store unreachable: stale after lease - margin (no work handed
        // out), lost after a whole lease (the run stops, saying why).
        fail.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(900)).await;
        assert!(!member.state.fresh());
        assert!(member.state.lost());
        assert!(
            member.state.lost_message().contains("could not be renewed"),
            "{}",
            member.state.lost_message()
        );
        member.stop();
        assert!(left.load(Ordering::SeqCst), "the worker leaves at the end");
    }

    #[tokio::test]
    async fn the_operators_pause_and_rate_from_another_worker_reach_the_engine() {
        let controls: Arc<Mutex<Option<SharedControls>>> = Arc::default();
        let fake = Fake {
            live: Arc::new(AtomicU32::new(1)),
            fail: Arc::default(),
            left: Arc::default(),
            controls: controls.clone(),
            stops: Arc::default(),
        };
        let member = Member::start(Box::new(fake), InDoubtPolicy::Resend).unwrap();
        let (_status_tx, status) = watch::channel(EngineStatus::default());
        let (control, mut engine) = mpsc::unbounded_channel();
        member.attach(status, control);
        *controls.lock().unwrap() = Some(SharedControls {
            version: 1,
            paused: true,
            rate: Some(Some(40.0)),
        });
        assert_eq!(engine.recv().await, Some(Control::Pause));
        assert_eq!(engine.recv().await, Some(Control::SetRate(Some(40.0))));
        // The same version again changes nothing; a newer one resumes.
        *controls.lock().unwrap() = Some(SharedControls {
            version: 2,
            paused: false,
            rate: Some(Some(40.0)),
        });
        assert_eq!(engine.recv().await, Some(Control::Resume));
        member.stop();
        assert!(engine.try_recv().is_err(), "nothing else was applied");
    }

    #[test]
    fn controls_apply_only_what_changed() {
        let c = |version, paused, rate| SharedControls {
            version,
            paused,
            rate,
        };
        assert_eq!(controls_to_apply(None, None), vec![]);
        assert_eq!(
            controls_to_apply(None, Some(&c(1, false, None))),
            vec![],
            "never paused, no rate set: nothing"
        );
        assert_eq!(
            controls_to_apply(Some(&c(1, true, None)), Some(&c(2, true, Some(None)))),
            vec![Control::SetRate(None)]
        );
    }
}
