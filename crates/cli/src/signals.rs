//! Ctrl-C, SIGTERM and SIGHUP: the first stops gracefully, the second exits
//! at once (status 130).
//!
//! The listener starts before the campaign is prepared, so a signal during
//! the ingest of a large CSV stops it at the next batch boundary with the
//! checkpoint committed (the `stop` flag, read by the ingest), and a signal
//! while sending sends [`Control::Stop`] to the engine. SIGHUP (the terminal
//! closed, or an operator's `kill -HUP`) is a stop request like the others:
//! its default action would kill the process mid-transaction, leaving
//! recipients in doubt. Under `nohup` (SIGHUP ignored at start) it stays
//! ignored, as the operator asked.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use edm_model::Control;
use tokio::sync::mpsc::UnboundedSender;

/// The installed listener. Dropping it stops listening.
pub struct Signals {
    /// Set by the first signal; the ingest polls it between batches.
    stop: Arc<AtomicBool>,
    /// The running campaign's control channel, once it runs.
    control: Arc<OnceLock<UnboundedSender<Control>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Signals {
    /// Starts listening. `tui`: the dashboard may own the terminal, so a
    /// second signal restores it before exiting.
    pub fn listen(tui: bool) -> Signals {
        let stop = Arc::new(AtomicBool::new(false));
        let control: Arc<OnceLock<UnboundedSender<Control>>> = Arc::new(OnceLock::new());
        let (stop2, control2) = (Arc::clone(&stop), Arc::clone(&control));
        // Before any handler is installed: installing one replaces SIG_IGN.
        let hangup = !hangup_ignored();
        let task = tokio::spawn(async move {
            let mut count = 0;
            loop {
                wait_for_signal(hangup).await;
                count += 1;
                if count > 1 {
                    if tui {
                        edm_dashboard::restore_terminal();
                    }
                    say("quitting at once");
                    std::process::exit(130);
                }
                stop2.store(true, Ordering::SeqCst);
                match control2.get() {
                    Some(c) => {
                        say(
                            "\nstopping: finishing the transactions in flight (press Ctrl-C again to quit at once; unfinished ones become in doubt)",
                        );
                        let _ = c.send(Control::Stop);
                    }
                    None => say(
                        "\nstopping: storing the recipients read so far (press Ctrl-C again to quit at once)",
                    ),
                }
            }
        });
        Signals {
            stop,
            control,
            task,
        }
    }

    /// The flag the ingest polls.
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.stop)
    }

    /// From now on a signal stops the engine through `control`. A signal
    /// that came between the end of the ingest and now stops it at once.
    pub fn attach(&self, control: UnboundedSender<Control>) {
        let _ = self.control.set(control.clone());
        if self.stop.load(Ordering::SeqCst) {
            let _ = control.send(Control::Stop);
        }
    }
}

impl Drop for Signals {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Writes a line to stderr, ignoring errors: after SIGHUP the terminal may
/// be gone, and `eprintln!` would panic on the failed write.
fn say(text: &str) {
    let _ = writeln!(std::io::stderr(), "{text}");
}

/// True when SIGHUP was ignored when edm started (`nohup edm send ...`):
/// the operator asked for a run that survives the terminal, so edm leaves
/// SIGHUP ignored. Read from `/proc/self/status` (`SigIgn`, a hex mask whose
/// bit 0 is signal 1, SIGHUP) before tokio installs a handler; where there is
/// no `/proc`, SIGHUP is taken as not ignored.
fn hangup_ignored() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("SigIgn:"))
                .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        })
        .is_some_and(|mask| mask & 1 != 0)
}

/// Waits for Ctrl-C, SIGTERM, or (with `hangup`) SIGHUP.
#[cfg(unix)]
async fn wait_for_signal(hangup: bool) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    let mut hup = if hangup {
        signal(SignalKind::hangup()).ok()
    } else {
        None
    };
    let hup_recv = async {
        match hup.as_mut() {
            Some(h) => {
                h.recv().await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        _ = hup_recv => {}
    }
}

#[cfg(not(unix))]
async fn wait_for_signal(_hangup: bool) {
    let _ = tokio::signal::ctrl_c().await;
}
