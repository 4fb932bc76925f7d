//! Ctrl-C, SIGTERM and SIGHUP: the first stops gracefully, the second exits
//! at once (status 130).
//!
//! The listener starts before the campaign is prepared, so a signal during
//! the ingest of a large CSV stops it at the next batch boundary with the
//! checkpoint committed (the `stop` flag, read by the ingest), and a signal
//! while sending sends [`Control::Stop`] to the engine. SIGHUP (the terminal
//! closed, or an operator's `kill -HUP`) is a stop request like the others:
//! its default action would kill the process mid-transaction, leaving
//! recipients in doubt.

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
        let task = tokio::spawn(async move {
            let mut count = 0;
            loop {
                wait_for_signal().await;
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

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let hup = signal(SignalKind::hangup());
    match (term, hup) {
        (Ok(mut term), Ok(mut hup)) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
                _ = hup.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}
